"""The library under real servers in subprocesses, over HTTP on 127.0.0.1."""
