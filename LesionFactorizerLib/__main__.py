import sys

from LesionFactorizerLib.cli import main

sys.exit(main())
