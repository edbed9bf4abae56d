"""Drop-in replacements for other face libraries' APIs (see :mod:`visage.compat.face_recognition`)."""
