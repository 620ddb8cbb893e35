"""The ``neuronplace`` console script.

One module per subcommand (``local``, ``run``, ``demo``, ``plan``, ``cores``); each defines
``configure(parser)`` to declare its arguments and ``run(args) -> int`` to do the work.
``main`` wires them together and imports a subcommand's module only when it is used, so
``neuronplace plan`` never imports kopf and nothing here ever imports torch.
"""
