"""Flask extensions, created unbound and bound to each app in ``create_app``."""

from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_sqlalchemy_lite import SQLAlchemy
from flask_wtf.csrf import CSRFProtect

db = SQLAlchemy()
csrf = CSRFProtect()
babel = Babel()
# Keys on the client address as ProxyFix (with PORTAL_TRUSTED_PROXIES) resolved it.
limiter = Limiter(key_func=get_remote_address)
# Staff sessions of the console (portal/agent/auth.py); bound only when the console is served.
login_manager = LoginManager()
