"""The HTTP service: FastAPI app, routes, schemas, auth, errors, static web page."""
