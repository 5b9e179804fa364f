"""The browser dashboard: server-rendered pages, a cookie session, an app-wide live feed."""
