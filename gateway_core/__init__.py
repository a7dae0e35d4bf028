"""Domain shared by the proxy and the app: keys, pricing, usage and analytics.

This package imports no Streamlit, so the proxy, the app, the command line
and the tests all use the same code.
"""
