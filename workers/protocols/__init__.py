"""Sans-IO protocol codecs: build bytes and parse bytes, never touch a socket."""
