from abreast.cli import main

raise SystemExit(main())
