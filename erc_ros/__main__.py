from erc_ros.cli import main

raise SystemExit(main())
