"""The fleet dashboard: one page (a jinja2 template, plain JavaScript and CSS) served by the
router, no build step and no CDN. The page polls `/cluster/status` and `/cluster/operations`
about every second and draws them; its buttons call the control routes."""
