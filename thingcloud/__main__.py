"""``python -m thingcloud``: the same as the ``thingcloud`` command."""

from thingcloud.cli import main

main()
