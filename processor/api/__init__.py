"""The HTTP API: the app and its routes (``app``), the native ``/v1`` API (``native``,
``uploads``, ``reviews``, ``webhooks``), the older service's ``/analyze`` endpoints (``seed``), keys
(``auth``), the documentation pages and their schema (``docs``, ``openapi``) and ``/metrics``
(``metrics``), over what they share (``common``)."""
