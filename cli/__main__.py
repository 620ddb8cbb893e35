import sys

from neuronplace.cli.main import main

sys.exit(main())
