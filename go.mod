module github.com/postern/postern

go 1.26.0

require (
	github.com/postern/postern/api v0.0.0
	github.com/postern/postern/internal v0.0.0
	github.com/postern/postern/services/fetcher v0.0.0
	github.com/postern/postern/services/relay v0.0.0
	github.com/postern/postern/services/router v0.0.0
	github.com/postern/postern/services/users v0.0.0
)

require (
	github.com/klauspost/compress v1.20.3 // indirect
	github.com/pierrec/lz4/v4 v4.1.33 // indirect
	github.com/segmentio/kafka-go v0.4.51 // indirect
)

replace github.com/postern/postern/internal => ./internal

replace github.com/postern/postern/api => ./api

replace github.com/postern/postern/services/users => ./services/users

replace github.com/postern/postern/services/fetcher => ./services/fetcher

replace github.com/postern/postern/services/router => ./services/router

replace github.com/postern/postern/services/relay => ./services/relay
