"""The apps the tests serve, each behind the middleware and configured by environment
variables, so a real server in a subprocess can import them by name
(`gunicorn 'tests.sites.basic:wsgi_factory()'`)."""
