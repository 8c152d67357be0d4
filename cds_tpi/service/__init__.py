"""CDS Hooks 2.0 HTTP service: ASGI app, request handling, JWT auth, feedback and audit storage."""
