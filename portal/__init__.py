"""The affected-patient portal. The application factory is ``portal.app.create_app``."""
