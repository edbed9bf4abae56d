"""The HTTP service, ``visage serve``: a versioned REST API over the gallery.

Import :func:`visage.server.app.create_app` to build the ASGI app. This package's ``__init__``
imports nothing, so loading :mod:`visage.server.keys_store` (the migrations do) stays cheap.
"""
