"""What reviewers of auto-labels look at: overlays with track ids, classes and a legend
(:mod:`.overlay`), MCAP logs of the labels for Foxglove (:mod:`.mcap`), and a report of the
videos worst first (:mod:`.report`)."""
