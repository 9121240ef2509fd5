# rackup config.ru -s puma -o 127.0.0.1 -p 8000   (or ./run.sh)
require_relative "app"

use Rack::Head # HEAD / answers like GET /, without the body
run ExampleApp.new
