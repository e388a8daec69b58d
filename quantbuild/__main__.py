from quantbuild.cli import main

raise SystemExit(main())
