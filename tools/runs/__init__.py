"""Looking inside runs and acting on them: `make workflows/history/purge`, the dashboard, `make approve`,
the crash and approval demos (with the example refund agent's app), and the screenshots."""
