"""The HTTP edges of securecache: a read-only public API and an authenticated internal API.

Each is a thin Starlette application over :class:`securecache.SecureCache`: parse, validate,
call the library, render. No SQL and no Redis commands live here. One module per concept:

- :mod:`servers.public_api`, :mod:`servers.internal_api`: the two APIs, each route declared
  once (its handler's signature and docstring, and the responses it gives);
- :mod:`servers.routes`: what a declaration holds, and how a request is dispatched to it;
- :mod:`servers.params`: parameter kinds and request bodies, each parsed and documented
  from the same rules;
- :mod:`servers.schemas`: JSON Schemas of the wire types, from their attrs classes;
- :mod:`servers.openapi`: the OpenAPI document, generated from the declarations;
- :mod:`servers.problems`: errors as RFC 9457 problem details;
- :mod:`servers.conditional`: ETags, If-None-Match and If-Match;
- :mod:`servers.auth`: bearer tokens;
- :mod:`servers.probes`: ``/healthz`` and ``/readyz``;
- :mod:`servers.telemetry`: the OpenTelemetry SDK (traces, metrics) and request middleware;
- :mod:`servers.settings`: what a server process reads beyond the library's settings;
- :mod:`servers.app`: the app factory;
- :mod:`servers.launcher` (``python -m servers public|internal``): the one launcher.
"""
