"""Model soups: weighted parameter averages of fine-tuned models, streamed tensor by tensor.

A command line over `mapalign.soup`; run with --help for every flag."""
import sys

from mapalign import cli
from mapalign.soup import soup, weighted_soup


if __name__ == "__main__":
    # the original command line had no subcommand (`python getDPOsoup.py --...`): it runs soup
    if len(sys.argv) > 1 and sys.argv[1].startswith("--") and sys.argv[1] not in ("--help", "-h"):
        cli.main(soup)
    else:
        cli.main({"soup": soup, "weighted_soup": weighted_soup})
