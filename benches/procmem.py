"""Process memory as the benchmarks report it: private resident memory (RssAnon)."""


def rss_anon_kib(pid):
    """RssAnon of process `pid` in KiB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
