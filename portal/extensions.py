"""Flask extensions, created unbound and bound to each app in ``create_app``."""

from flask_babel import Babel
from flask_sqlalchemy_lite import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

db = SQLAlchemy()
csrf = CSRFProtect()
babel = Babel()
