"""Everything that draws on a terminal (rich): the consoles, the Events that draw progress, and one renderer
module per stage result. Stages never import this package; only cli.py does."""
