module github.com/postern/postern/services/router

go 1.26.0

require (
	github.com/postern/postern/api v0.0.0
	github.com/postern/postern/internal v0.0.0
)

replace github.com/postern/postern/internal => ../../internal

replace github.com/postern/postern/api => ../../api
