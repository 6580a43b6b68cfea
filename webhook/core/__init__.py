"""What every layer shares: settings read from the environment, the project's error
types, where the service's own log lines go, and JSON decoding that is fast and gives
exactly the standard library's result.

May use: nothing else in webhook.
"""
