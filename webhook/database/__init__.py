"""PostgreSQL itself: finding and opening connections, the pool each web worker's threads
share, migrations from schema/, the embedded server for development and tests, and
splitting SQL files into statements.

May use: webhook.core.
"""
