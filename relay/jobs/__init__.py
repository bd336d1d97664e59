"""Jobs: their lifecycle (a pure table with the options and policies), submission, cancel
and expiry, and the results readers are served (results, live_chunks, notify, csv_cells)."""
