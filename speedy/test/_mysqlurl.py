from urllib.parse import unquote, urlsplit


def connect_kwargs(url):
    """PyMySQL connect() arguments for a C{mysql://user:pw@host:port/db} URL."""
    parts = urlsplit(url)
    return dict(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or "test",
    )
