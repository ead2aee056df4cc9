# healthy-v1: the first configuration; demo-web reports "healthy-v1".
{ demo.version = "healthy-v1"; }
