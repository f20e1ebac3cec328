"""The partner API blueprint (``/api/v1``): bearer keys, JSON, problem+json errors."""
