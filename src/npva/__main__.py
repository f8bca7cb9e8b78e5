from npva.cli import main

raise SystemExit(main())
