#!/usr/bin/env bash
# The images of what a reader of the built site sees (docs/images/site-home.png, site-api.png):
# build the site, then headless Chromium on the built HTML (Debian: apt-get install chromium).
# Run from the repository root: bash docs/screenshots.sh
set -euo pipefail
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet -d "$site"
shot() {  # page, image, height
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,"$3" \
    --screenshot="docs/images/$2" "file://$site/$1" 2>/dev/null
}
shot index.html site-home.png 900
shot reference/api/index.html site-api.png 1400
rm -rf "$site"
