"""`ardiff serve`: a local page to draw class grids, stream video under an editable prompt
schedule, and tell stories with and without ACDC.

- :mod:`ardiff.serve.studio`: the handlers (no HTTP): model access, request checks, the views' work.
- :mod:`ardiff.serve.queue`: one generation at a time, in order of arrival.
- :mod:`ardiff.serve.app`: the FastAPI app and its routes; ``page.html`` is the page.
"""

from ardiff.serve.studio import ModelAccess, RequestError, ServeLimits, Studio

__all__ = ["ModelAccess", "RequestError", "ServeLimits", "Studio"]
