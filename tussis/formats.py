"""The audio formats Tussis accepts, by file extension.

It lives in the client package, which every install has, so the client can
pick recordings out of a folder without the server's decoding libraries; the
API's batch intake and the training data reader read the same list.
"""

AUDIO_SUFFIXES = frozenset(
    {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".webm", ".m4a", ".aac", ".mp4"}
)
