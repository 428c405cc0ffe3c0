from arkerfs.cli import main

raise SystemExit(main())
