"""The one exception type the plugin raises for bad user input."""


class AttTokError(ValueError):
    """Bad AttTok configuration, vocabulary or data; the message names the file, key, line or sample."""
