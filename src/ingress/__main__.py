from ingress.cli import main

raise SystemExit(main())
