"""chartdrop: watched-folder document ingestion into patient charts."""
