"""Looking inside runs: `make workflows/history/purge`, the dashboard, the crash demo and the screenshots."""
