"""The board's own pages, each a :class:`plugins.board.pages.Page` with its router."""
