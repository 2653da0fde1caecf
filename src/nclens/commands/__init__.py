"""Sub-commands of ``nclens``: each module defines ``register(app)`` (see :mod:`nclens.cli`)."""
