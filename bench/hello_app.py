"""The floor for pages_bench.py: a bare Flask app that answers "hello" at /, nothing else."""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "hello"
