"""The HTTP service, ``visage serve``: a versioned REST API over the gallery.

Import :func:`visage.server.app.create_app` to build the ASGI app; :mod:`visage.server.hub` is
the server's side of the edge protocol (devices, exactly-once events, signed snapshots). This
package's ``__init__`` imports nothing, so the CLI's key commands load only what they use.
"""
