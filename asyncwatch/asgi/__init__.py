"""The ASGI middleware: HTTP and WebSocket metrics and spans per the OpenTelemetry semantic
conventions, route templates, and the patch that adds it to Starlette apps by itself.
"""
