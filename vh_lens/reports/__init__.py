"""HTML reports written by the command line, all on one page template (:mod:`vh_lens.reports.page`).

- :mod:`vh_lens.reports.page`: :func:`~vh_lens.reports.page.write_report` (the template, plotly.js
  ``file``/``cdn``/``inline``, sibling links and ``index.html``, rounded tables, figure widths);
- :mod:`vh_lens.reports.outputs`: output folders side by side linked, their parent's ``index.html``;
- :mod:`vh_lens.reports.scan`: the scan's page (``vh-lens scan``);
- :mod:`vh_lens.reports.companions`: what the scan's page can add (``--compare``, ``--lens``);
- :mod:`vh_lens.reports.experiments`: the pages of ``vh-lens mask``, ``lens``, ``probe`` and ``patch``.
"""
