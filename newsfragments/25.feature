Man pages ``primed(8)`` (``twistd primed`` and every option) and
``primed-client(1)``, generated from the docs and installed with the package
under ``share/man/``: ``man primed-client`` works in an activated venv.
