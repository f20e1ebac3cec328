"""The call-center console at /agent/: staff sign in with two factors and serve callers."""
