"""`python -m ret2.index`: the `ret2-index` command (`ret2.commands.index`)."""

from ret2.commands.index import main

if __name__ == "__main__":
    main()
