"""``python -m servers public|internal [--host H] [--port P]``: see :mod:`servers.launcher`."""

from servers.launcher import main

main()
